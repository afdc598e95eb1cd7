#!/usr/bin/env bash
# A second English corpus for benchmarks/quality_matched_tokens.py, from Debian's packages
# (nothing else to download): the King James Bible (bible-kjv, public domain), one .txt file
# per book, one paragraph per chapter, verse numbers removed. About 820k words.
#
#   sudo apt-get install bible-kjv        # the `bible` program and its text
#   bash scripts/kjv-corpus.sh runs/corpora/kjv
#   saekit harvest --model smollm2 --hook layers.8.resid_post --corpus runs/corpora/kjv \
#       --tokens 400000 --context-size 128 --out runs/kjv_l8
set -euo pipefail
out=${1:?usage: scripts/kjv-corpus.sh OUT_FOLDER}
command -v bible >/dev/null || { echo "kjv-corpus: the 'bible' program is missing; install Debian's bible-kjv (apt-get install bible-kjv)." >&2; exit 1; }
mkdir -p "$out"
bible -f 'Gen1:1-Rev22:21' | python3 -c '
import collections, re, sys
out = sys.argv[1]
books = collections.OrderedDict()
for line in sys.stdin:
    m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line.rstrip("\n"))
    if m:
        book, chapter, _, text = m.groups()
        books.setdefault(book, collections.OrderedDict()).setdefault(chapter, []).append(text)
for i, (book, chapters) in enumerate(books.items(), 1):
    with open(f"{out}/{i:02d}_{book}.txt", "w") as f:
        f.write("\n\n".join(" ".join(verses) for verses in chapters.values()) + "\n")
print(f"kjv-corpus: {len(books)} books in {out}")
' "$out"
