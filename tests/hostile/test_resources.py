"""Threads, CPU quota, memory over many passes, and Ctrl-C in the middle of an encode."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from bgeort.session import cgroup_cpu_quota, quota_cores


@pytest.mark.parametrize("quota, period, cores", [("150000", "100000", 2), ("100000", "100000", 1), ("50000", "100000", 1),
                                                  ("max", "100000", None), ("-1", "100000", None), ("x", "1", None),
                                                  ("400000", "100000", 4)])
def test_quota_cores(quota, period, cores):
    assert quota_cores(quota, period) == cores


def test_cgroup_quota_files_v2_and_v1(tmp_path):
    (tmp_path / "v2" / "kube" / "pod").mkdir(parents=True)
    (tmp_path / "v2" / "kube" / "pod" / "cpu.max").write_text("250000 100000\n")
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v2"), own="0::/kube/pod\n") == 3
    assert cgroup_cpu_quota(str(tmp_path / "v2"), own="0::/\n") is None
    (tmp_path / "v1" / "cpu" / "docker" / "abc").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "v1" / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1"), own="4:memory:/x\n3:cpu,cpuacct:/docker/abc\n") == 2
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1"), own="3:cpu,cpuacct:/\n") is None
    assert cgroup_cpu_quota(str(tmp_path / "nothing"), own="") is None


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


def test_one_usable_core_means_one_inference_thread(tiny_model):
    """Pinned to one core, bgeort runs one inference thread and opens no side-by-side session: the only
    threads it adds are the hasher (idle after open), onnxruntime's own and tokenizers' pool of one."""
    done = run_python(f"""
        import os
        os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
        import bgeort
        from bgeort.session import default_threads
        before = len(os.listdir("/proc/self/task"))
        model = bgeort.Embedder({str(tiny_model)!r})
        model.encode(["a cat sat on the mat"] * 500)
        print(default_threads(), model._model.threads, model._model._side is None,
              len(os.listdir("/proc/self/task")) - before)
    """)
    assert done.returncode == 0, done.stderr
    usable, threads, no_side, added = done.stdout.split()
    assert (usable, threads, no_side) == ("1", "1", "True")
    assert int(added) <= 3, done.stdout


def test_rss_stays_flat_over_twenty_passes(tiny_model):
    """20 passes over long and mixed texts: what the process holds after pass 5 and after pass 20 differ
    by less than a leak of a few kB per call would add up to (each pass makes dozens of calls)."""
    done = run_python(f"""
        import random, resource, warnings
        import bgeort
        warnings.simplefilter("ignore")
        def rss_kb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        words = "the a man woman is playing guitar piano on street cat dog sat mat".split()
        rng = random.Random(0)
        long_texts = [" ".join(rng.choices(words, k=200)) for _ in range(64)]
        mixed = [" ".join(rng.choices(words, k=rng.choice([3, 10, 40, 120]))) for _ in range(256)]
        model = bgeort.Embedder({str(tiny_model)!r}, threads=2, side_by_side=True)
        seen = []
        for step in range(20):
            for start in range(0, 256, 8):
                model.encode(mixed[start:start + 8])
            model.encode(long_texts)
            seen.append(rss_kb())
        print(seen[4], seen[-1])
    """, timeout=600)
    assert done.returncode == 0, done.stderr
    after_5, after_20 = map(int, done.stdout.split())
    assert after_20 - after_5 < 8 * 1024, (after_5, after_20)  # < 8 MB over 15 passes of ~33 calls each


def test_ctrl_c_during_encode_returns_promptly_and_leaves_the_model_usable(tiny_model):
    script = f"""
        import os, signal, threading, time
        import numpy as np
        import bgeort
        model = bgeort.Embedder({str(tiny_model)!r}, threads=2, side_by_side=True)
        texts = ["a cat sat on the mat", "the red house on the street is big"] * 150_000
        expected = model.encode(texts[:2])
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            model.encode(texts)
        except KeyboardInterrupt:
            print("interrupted", round(time.monotonic() - start, 1))
        else:
            print("finished first")
        np.testing.assert_array_equal(model.encode(texts[:2]), expected)
        print("usable")
    """
    done = run_python(script, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("interrupted") and lines[-1] == "usable", done.stdout


def test_a_batch_that_runs_out_of_memory_is_split_not_failed(tiny_model):
    """onnxruntime's CPU arena capped at 8 MB (an env allocator, as a constrained host would have): a
    batch of 256 max-length texts does not fit, its halves do; the vectors are the ones they get alone."""
    done = run_python(f"""
        import warnings
        import numpy as np
        import onnxruntime as ort
        import bgeort, bgeort.session
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(8 * 2**20, -1, -1, -1))
        plain = bgeort.session.session_options
        def capped(*args, **kwargs):
            options = plain(*args, **kwargs)
            options.add_session_config_entry("session.use_env_allocators", "1")
            return options
        bgeort.session.session_options = capped
        model = bgeort.Embedder({str(tiny_model)!r}, precision="fp32", threads=1, batch_size=256,
                                max_batch_tokens=256 * 64)
        words = ["guitar", "piano", "cat", "dog", "house", "car", "red", "blue"]
        texts = [" ".join(words[i % 8:] + words[:i % 8]) * 10 for i in range(256)]  # all past max_length 64
        assert (model.token_counts(texts) > 64).all()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            vectors = model.encode(texts)
            alone = np.stack([model.encode([text])[0] for text in texts])
        split = [str(w.message) for w in seen if "ran out of memory" in str(w.message)]
        print(len(split), float(np.abs(vectors - alone).max()))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    warned, diff = done.stdout.split()
    assert warned == "1" and float(diff) < 1e-5, done.stdout
