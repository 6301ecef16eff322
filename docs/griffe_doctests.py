"""griffe extension for the API page: a docstring's `>>>` example lines become a Python code block.

Written as plain text in the docstrings (help() shows them so), they would otherwise render as
nested Markdown block quotes.
"""

from __future__ import annotations

import griffe


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_examples(obj.docstring.value)


def fence_examples(text: str) -> str:
    out, inside = [], False
    for line in text.splitlines():
        example = line.lstrip().startswith((">>> ", "... "))
        if example and not inside:
            out.append("```python")
            inside = True
        elif not example and inside:
            out.append("```")
            inside = False
        out.append(line.lstrip()[4:] if example else line)
    if inside:
        out.append("```")
    return "\n".join(out)
