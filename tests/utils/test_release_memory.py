"""release_free_memory: freed, fragmented heap goes back to the OS (glibc)."""
import gc

import pytest

from utils.logging import _rss_mb
from utils.memory import _malloc_trim, release_free_memory


@pytest.mark.skipif(_rss_mb() is None or _malloc_trim() is None, reason="needs /proc and glibc")
def test_fragmented_free_heap_is_returned_to_the_os():
    blocks = [bytes(2000) for _ in range(100_000)]  # ~200 MB of small heap blocks (below mmap size)
    kept = blocks[::50]  # every 50th stays alive: the freed rest cannot shrink the heap top
    del blocks
    gc.collect()
    before = _rss_mb()
    release_free_memory()
    after = _rss_mb()
    assert len(kept) == 2000
    assert before - after > 100, (before, after)  # most of the ~196 MB freed is resident no more
