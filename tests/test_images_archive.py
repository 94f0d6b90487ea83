"""The image machinery against Debian's real archive (network): what the unit tests cannot reach offline."""

from __future__ import annotations

from unit.tinyfs import python_on_tmpfs

from harness.images import load_manifest, release_archive


def test_a_full_disk_while_reading_the_archive_index_says_so(tmp_path):
    """`./run images lock` on a full disk: apt cannot write the index, which is no mirror trouble (and apt
    itself exits 0). One real suite, the smallest: with several, apt stalls for good after the error."""
    cache = tmp_path / "cache"
    bookworm = release_archive(load_manifest(), "bookworm", "this test")
    archive = {**bookworm, "sources": [{"url": "http://deb.debian.org/debian", "suites": ["bookworm-updates"]}]}
    code = (
        "from pathlib import Path\nfrom harness.cache import Cache\nfrom harness.errors import InfrastructureError\n"
        "from harness.images import SourceApt\n"
        f"try:\n    SourceApt(Cache(Path({str(cache)!r})), {archive!r}).update()\n    print('updated')\n"
        "except InfrastructureError as exc:\n    print(exc)\n"
    )
    proc = python_on_tmpfs(cache, code, size_kb=16)  # a suite's InRelease alone is over 50 KB
    message = proc.stdout.strip()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert message.startswith(f"the disk holding the image cache {cache} is full (No space left on device "
                              "writing apt's source package index;"), message
    assert "mirror" not in message and "network" not in message, message
