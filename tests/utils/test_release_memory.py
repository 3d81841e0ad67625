"""release_free_memory: freed, fragmented heap goes back to the OS (glibc)."""
import gc
import os
import re
from pathlib import Path

import pytest

from utils.memory import _malloc_trim, release_free_memory


def heap_resident_mib() -> float | None:
    """Resident size of this process's main heap (the ``[heap]`` mapping of /proc/self/smaps), MiB: the
    main thread's small allocations, without other threads' arenas, which move on their own."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    kib, in_heap = 0, False
    for line in text.splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            in_heap = line.rstrip().endswith("[heap]")
        elif in_heap and line.startswith("Rss:"):
            kib += int(line.split()[1])
    return kib / 1024


@pytest.mark.skipif(heap_resident_mib() is None or _malloc_trim() is None, reason="needs /proc and glibc")
def test_fragmented_free_heap_is_returned_to_the_os():
    release_free_memory()  # from a trimmed heap: what earlier tests freed is not resident any more
    start = heap_resident_mib()
    blocks = [bytes(2000) for _ in range(100_000)]  # ~196 MiB of small heap blocks (below the mmap size)
    kept = blocks[::50]  # every 50th stays alive: the freed rest cannot shrink the heap top
    del blocks
    gc.collect()
    before = heap_resident_mib()
    assert before - start > 150  # the freed blocks are still resident
    release_free_memory()
    after = heap_resident_mib()
    # Resident afterwards: what was before the blocks, plus the pages around each of the 2000 kept blocks
    # (a block of 2000 bytes touches at most 2 pages, and the free chunk after it keeps its header page):
    # 2000 * 3 pages of 4 KiB = 23.4 MiB at most; the ~170 MiB between them went back to the OS.
    pinned = 2000 * 3 * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert after <= start + pinned, (start, before, after)
    assert len(kept) == 2000
