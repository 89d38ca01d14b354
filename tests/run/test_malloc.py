import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="train.malloc='heap' applies to Linux with glibc only")

# Allocates and fills a 64 MiB tensor six times; prints the page faults of the last time (the heap grows
# during the first two or three, then every allocation reuses it).
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from coworld.run.session import keep_freed_memory
    print(keep_freed_memory(sys.argv[1]))
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(2 ** 24)
        del x
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
""")


@pytest.mark.parametrize("mode", ["heap", "system"])
def test_heap_mode_reuses_freed_memory_without_page_faults(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    if mode == "heap":
        assert applied == "True"
        assert int(faults) < 500  # the freed 64 MiB is reused (16,384 pages if mapped afresh)
    else:
        assert applied == "False"
        assert int(faults) > 10_000  # glibc maps a block this large afresh each time


def test_malloc_setting_is_checked():
    from coworld.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="malloc"):
        load_config("tiny", ["train.malloc=jemalloc"])
