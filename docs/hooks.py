"""mkdocs hook: serve bench/results' charts under performance/results/ in the built site.

The tables come in through pymdownx.snippets (mkdocs.yml); images cannot, so they are added here
as generated files, read from bench/results at build time: nothing is copied into docs/.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def on_files(files, config):
    for image in sorted(RESULTS.rglob("*.png")):
        if "tmp" in image.relative_to(RESULTS).parts:  # bench/results/tmp is scratch, git-ignored
            continue
        uri = f"performance/results/{image.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(image)))
    return files
