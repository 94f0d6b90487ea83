"""A git repository made from the pinned Debian `xen` source, with a planted series for `harness bisect`.

The first commit is the source as Debian builds it (its patches applied); on it, in order:

    c1  harmless: a line in the docs
    c2  harmless: a comment in xen/arch/arm/domain_build.c
    c3  BUILD BREAK: a misspelt field in make_hypervisor_node (does not compile)
    c4  harmless: the misspelling fixed
    c5  harmless: a comment in make_hypervisor_node
    c6  REGRESSION: make_hypervisor_node writes every extended region 2 MiB short into dom0's `hypervisor`
        node (Xen's log still prints the whole region): only the harness's three-witness check sees it
    c7  harmless: a line in the docs

git bisect's first step over c0..c7 is c3 (the break, skipped), then c4, so the bisection must step
around the break. Run `python tests/bisect_series.py DIR` to make it by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.cache import Cache
from harness.xenbuild import BuildLog, unpack_source, xen_source

DOMAIN_BUILD = "xen/arch/arm/domain_build.c"
EXT_REGION = """        printk("%pd: extended region %d: %#"PRIx64"->%#"PRIx64"\\n",
               d, i, start, start + size);

        dt_child_set_range(&cells, addrcells, sizecells, start, size);"""
NR_BANKS = "nr_ext_regions = ext_regions->nr_banks;"
HYP_NODE = ("    /* See linux Documentation/devicetree/bindings/arm/xen.txt */\n"
            "    res = fdt_begin_node(fdt, \"hypervisor\");")

# (subject, file, old text, new text): each commit one edit
SERIES = (
    ("docs: say where the harness's bisect series comes from", "README", None,
     "\nThis tree carries a planted series for xen-arm-harness's bisect test.\n"),
    ("arm/domain_build: a comment on dom0's memory banks", DOMAIN_BUILD, "static u64 __initdata dom0_mem;",
     "/* dom0's memory, from dom0_mem= (a test series' harmless comment) */\nstatic u64 __initdata dom0_mem;"),
    ("arm/domain_build: tidy the extended regions count", DOMAIN_BUILD, NR_BANKS,
     "nr_ext_regions = ext_regions->nr_bank;"),
    ("arm/domain_build: fix the build (nr_banks)", DOMAIN_BUILD, "nr_ext_regions = ext_regions->nr_bank;", NR_BANKS),
    ("arm/domain_build: say which binding the hypervisor node follows", DOMAIN_BUILD, HYP_NODE,
     HYP_NODE.replace("xen.txt */", "xen.txt (reg, interrupts) */")),
    ("arm/domain_build: keep extended regions clear of their end", DOMAIN_BUILD, EXT_REGION,
     EXT_REGION.replace("start, size);", "start, size - MB(2));")),
    ("docs: a second line", "README", None, "A second line.\n"),
)
BREAK, REGRESSION = 3, 6  # c3, c6

IDENTITY = {"GIT_AUTHOR_NAME": "Planted Series", "GIT_AUTHOR_EMAIL": "series@harness.invalid",
            "GIT_COMMITTER_NAME": "Planted Series", "GIT_COMMITTER_EMAIL": "series@harness.invalid",
            "GIT_AUTHOR_DATE": "2026-12-01T12:00:00Z", "GIT_COMMITTER_DATE": "2026-12-01T12:00:00Z"}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **IDENTITY})
    return proc.stdout.strip()


def make_series(directory: Path, cache: Cache | None = None) -> list[str]:
    """The repository at `directory`/xen: [c0, c1, …, c7] hashes."""
    cache = cache or Cache()
    work = Path(tempfile.mkdtemp(dir=directory, prefix="unpack-"))
    with BuildLog(directory / "unpack.log") as run:
        tree = unpack_source(cache, xen_source(), work, run)
    repo = directory / "xen"
    tree.rename(repo)
    git(repo, "init", "-q", "-b", "main")
    (repo / ".git" / "info" / "exclude").write_text(".pc/\n")  # quilt's own state, not the source
    git(repo, "add", "-A", "-f", ":!.pc")
    git(repo, "commit", "-q", "-m", "Debian's xen source as it builds (patches applied)")
    hashes = [git(repo, "rev-parse", "HEAD")]
    for subject, name, old, new in SERIES:
        path = repo / name
        text = path.read_text()
        if old is None:
            text += new
        else:
            assert text.count(old) == 1, f"{name}: the edit's anchor is not unique"
            text = text.replace(old, new)
        path.write_text(text)
        git(repo, "commit", "-q", "-a", "-m", subject)
        hashes.append(git(repo, "rev-parse", "HEAD"))
    return hashes


if __name__ == "__main__":
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("\n".join(make_series(out)))
