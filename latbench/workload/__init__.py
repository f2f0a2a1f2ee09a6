"""What each request asks for: a `WorkItem` per request index, the same for the same seed.

item.py holds the item, the `Workload` protocol and the seeded draws; synthetic.py the random-word
prompts; tokens.py what the target charges for their words (`TokenScale`) and prompts built to a
count of its tokens; files.py the prompt files (JSON Lines, ShareGPT) with their size caps;
reading.py reads those files a line or an entry at a time.
"""

from latbench.workload.files import MAX_PROMPT_ITEMS, MAX_PROMPT_TEXT_BYTES, FileWorkload
from latbench.workload.item import DEFAULT_MAX_TOKENS, MAX_TOKENS, WorkItem, Workload
from latbench.workload.reading import MAX_PROMPT_LINE_BYTES
from latbench.workload.synthetic import DEFAULT_VOCABULARY, SyntheticWorkload

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_VOCABULARY",
    "MAX_PROMPT_ITEMS",
    "MAX_PROMPT_LINE_BYTES",
    "MAX_PROMPT_TEXT_BYTES",
    "MAX_TOKENS",
    "FileWorkload",
    "SyntheticWorkload",
    "WorkItem",
    "Workload",
]
